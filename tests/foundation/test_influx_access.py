"""One InfluxDB access model (:class:`foundation.InfluxAccess`) under ingest and the API.

The same bad InfluxDB access is refused by ingest's ``influx`` block, the API's flat
``influx_*`` keys and an API ``influx_replicas`` item with the same reason, each naming the
keys as that service spells them; the same missing or unusable TLS file is named the same
way when the connections are prepared (start-up, ``check-config``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from api import ConfigError as ApiConfigError
from api import load_settings
from api.storage import influx_verify
from foundation import BrokerSetupError, InfluxAccess
from ingest import ConfigError as IngestConfigError
from ingest import load_config
from ingest._sink import _ssl_context
from tests.tls_helpers import Pki

_HTTPS = "https://db.city.example:8086"
_REMOTE = "http://db.city.example:8086"
# Where each service names a key: ingest's nested block, the API's flat keys, a replica.
_PREFIXES = re.compile(r"influx_replicas\[a\]\.|influx_|influx\.")


def _reason(message: str) -> str:
    """The refusal without the service's spelling of the keys and its framing."""
    return _PREFIXES.sub("", message.split("Value error, ")[-1])


def _ingest(access: dict[str, Any]) -> str:
    with pytest.raises(IngestConfigError) as refused:
        load_config(None, {"influx": access})
    return _reason(str(refused.value))


def _api(access: dict[str, Any]) -> str:
    with pytest.raises(ApiConfigError) as refused:
        load_settings(**{f"influx_{key}": value for key, value in access.items()})
    return _reason(str(refused.value))


def _replica(access: dict[str, Any]) -> str:
    with pytest.raises(ApiConfigError) as refused:
        load_settings(influx_replicas=[{"name": "a", **access}])
    return _reason(str(refused.value))


@pytest.mark.parametrize(
    ("access", "reason"),
    [
        ({"url": "http://127.0.0.1:8086", "ca_file": "/etc/ca.pem"},
         "ca_file needs an https:// url (TLS), not http://127.0.0.1:8086"),
        ({"url": "http://127.0.0.1:8086", "cert_file": "/c.pem", "key_file": "/k.pem"},
         "cert_file needs an https:// url (TLS)"),
        ({"url": _HTTPS, "cert_file": "/c.pem"},
         "cert_file and key_file go together (client certificate)"),
        ({"url": _HTTPS, "key_file": "/k.pem"}, "cert_file and key_file go together"),
        ({"url": "http://127.0.0.1:8086", "username": "reader"}, "username needs password"),
        ({"url": _REMOTE, "username": "reader", "password": "pw"},
         "credentials over plain http to a remote InfluxDB (db.city.example) are refused: "
         "use an https:// url (or allow_insecure: true for development)"),
        ({"url": "ftp://db.city.example"}, "String should match pattern"),
    ],
)  # fmt: skip
def test_both_services_refuse_the_same_access_alike(access: dict[str, Any], reason: str) -> None:
    refusals = {"ingest": _ingest(access), "api": _api(access), "replica": _replica(access)}
    assert all(reason in refusal for refusal in refusals.values()), refusals
    if "url" not in reason:  # a pattern error carries no key names
        return
    assert len(set(refusals.values())) == 1, refusals


def test_the_same_access_is_accepted_alike() -> None:
    for access in (
        {"url": "http://127.0.0.1:8086", "username": "reader", "password": "pw"},
        {"url": _HTTPS, "username": "reader", "password": "pw", "ca_file": "/etc/ca.pem"},
        {"url": _HTTPS, "cert_file": "/c.pem", "key_file": "/k.pem"},
    ):
        load_config(None, {"influx": access})
        load_settings(**{f"influx_{key}": value for key, value in access.items()})
        load_settings(influx_replicas=[{"name": "a", **access}])
    insecure = {"url": _REMOTE, "username": "reader", "password": "pw"}
    load_config(None, {"influx": insecure, "allow_insecure": True})
    load_settings(**{f"influx_{k}": v for k, v in insecure.items()}, influx_allow_insecure=True)


def test_verify_tls_rules() -> None:
    off = InfluxAccess(url=_HTTPS, verify_tls=False)
    with pytest.raises(ValueError, match="verify_tls false needs allow_insecure: true"):
        off.check_security(allow_insecure=False)
    off.check_security(allow_insecure=True)
    with pytest.raises(ValueError, match="ca_file has no effect with verify_tls false"):
        InfluxAccess(url=_HTTPS, verify_tls=False, ca_file=Path("/etc/ca.pem"))
    # The API reads replicas with verified TLS and basic auth only: said, not ignored.
    for unread in ({"verify_tls": False}, {"token": "t"}):
        with pytest.raises(ApiConfigError, match="not read by the API"):
            load_settings(
                influx_replicas=[{"name": "a", "url": _HTTPS, **unread}],
                influx_allow_insecure=True,
            )


def test_tls_files_are_judged_alike_when_prepared(tmp_path: Path, pki: Pki) -> None:
    missing = tmp_path / "ca.pem"
    not_a_ca = tmp_path / "not-a-ca.pem"
    not_a_ca.write_text("hello\n")
    for ca, reason in ((missing, "file not found"), (not_a_ca, "not a usable CA bundle")):
        ingest = load_config(None, {"influx": {"url": _HTTPS, "ca_file": str(ca)}})
        api = load_settings(influx_url=_HTTPS, influx_ca_file=ca)
        with pytest.raises(IngestConfigError) as by_ingest:
            _ssl_context(ingest.influx)
        with pytest.raises(ApiConfigError) as by_api:
            influx_verify(api.influx)
        with pytest.raises(BrokerSetupError) as shared:
            api.influx.ssl_context("influx_")
        assert reason in shared.value.reason
        assert (
            _reason(str(by_ingest.value))
            == _reason(str(by_api.value))
            == (f"ca_file: {shared.value.reason}")
        )
    good = InfluxAccess(url=_HTTPS, ca_file=pki.ca, cert_file=pki.client_cert,
                        key_file=pki.client_key)  # fmt: skip
    assert not isinstance(good.ssl_context(), bool)
    assert InfluxAccess(url="http://127.0.0.1:8086").ssl_context() is True
