"""The shipped ACL lets the API's gap repair ask a gateway to resend and hear the answer."""

from __future__ import annotations

from tests.foundation.test_deploy_broker import Client, ShippedBroker, broker

__all__ = ["broker"]  # the module-scoped shipped broker fixture, used here too


def test_the_api_sends_resend_and_reads_the_answer_on_its_response_topic(
    broker: ShippedBroker,
) -> None:
    api = Client(broker, "_api-1")
    gw_a = Client(broker, "gw-a")
    gw_b = Client(broker, "gw-b")
    try:
        for client in (api, gw_a, gw_b):
            assert client.connected() == 0
        # as api._broker subscribes: every gateway's answers to this API's client id
        assert api.subscribe("sc/v1/+/cmd/response/api-1") == [1]
        assert gw_a.subscribe("sc/v1/gw-a/cmd") == [1]
        assert api.publish("sc/v1/gw-a/cmd", b'{"cmd":"resend"}') == 0
        gw_a.wait(lambda: ("sc/v1/gw-a/cmd", b'{"cmd":"resend"}') in gw_a.messages)
        assert gw_a.publish("sc/v1/gw-a/cmd/response/api-1", b"answer-a") == 0
        api.wait(lambda: ("sc/v1/gw-a/cmd/response/api-1", b"answer-a") in api.messages)
        # a gateway cannot answer in another gateway's name
        assert gw_b.publish("sc/v1/gw-a/cmd/response/api-1", b"forged") != 0
    finally:
        for client in (gw_b, gw_a, api):
            client.close()
