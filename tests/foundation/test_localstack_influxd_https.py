"""influxd serving HTTPS (``Influxd(tls=...)``) and ``foundation.influxql`` verifying it."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from foundation import InfluxQueryError, influxql
from smartcity import ServiceError
from smartcity._localstack import Influxd, InfluxdTls
from tests.tls_helpers import Pki

pytestmark = pytest.mark.integration


def test_influxd_serves_https_with_the_configured_certificate(
    influxd_https: Influxd, pki: Pki
) -> None:
    assert influxd_https.url == f"https://{influxd_https.host}:{influxd_https.port}"
    assert "https-enabled = true" in influxd_https.config_path.read_text()
    served = ssl.get_server_certificate((influxd_https.host, influxd_https.port))
    assert ssl.PEM_cert_to_DER_cert(served) == ssl.PEM_cert_to_DER_cert(
        pki.server_cert.read_text()
    )
    # The helpers verify against the test CA: write, read back.
    influxd_https.create_database("tls_helpers")
    influxd_https.write("tls_helpers", b"m,device=d v=1 1000\nm,device=d v=2 2000\n")
    assert influxd_https.count("tls_helpers", "m", "v") == 2
    # Plain HTTP on the same port gets no InfluxDB answer (influxd answers 400 to it).
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(
            f"http://{influxd_https.host}:{influxd_https.port}/ping", timeout=5
        ).close()


def test_influxql_verifies_the_server_against_the_given_ca(
    influxd_https: Influxd, pki: Pki
) -> None:
    good = ssl.create_default_context(cafile=str(pki.ca))
    answer = influxql(influxd_https.url, "SHOW DATABASES", context=good)
    assert answer["results"][0]["series"][0]["name"] == "databases"
    for context in (None, ssl.create_default_context(cafile=str(pki.rogue_ca))):
        with pytest.raises(InfluxQueryError, match="CERTIFICATE_VERIFY_FAILED"):
            influxql(influxd_https.url, "SHOW DATABASES", context=context)


def test_a_missing_certificate_stops_influxd_at_start(tmp_path: Path, pki: Pki) -> None:
    broken = Influxd(
        data_dir=tmp_path / "influxd",
        tls=InfluxdTls(cert_file=tmp_path / "nope.crt", key_file=pki.server_key, ca_file=pki.ca),
    )
    with pytest.raises(ServiceError, match="exited"):
        broken.start(timeout=15)
    broken.stop()
