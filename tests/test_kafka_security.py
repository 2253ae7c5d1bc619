"""Kafka client security options from the environment (read once by the process settings)."""

from __future__ import annotations

import pytest

from pinrec.settings import Settings


def kafka_client_options(environ: dict[str, str]) -> dict:
    return Settings.from_env(environ).kafka_security.client_options()


def test_plaintext_by_default():
    assert kafka_client_options({}) == {}


def test_sasl_ssl_with_a_ca_file(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("certificate")
    options = kafka_client_options(
        {
            "PINREC_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
            "PINREC_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "PINREC_KAFKA_SASL_USERNAME": "pinrec",
            "PINREC_KAFKA_SASL_PASSWORD": "secret",
            "PINREC_KAFKA_SSL_CAFILE": str(ca),
        }
    )
    assert options == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "pinrec",
        "sasl_plain_password": "secret",
        "ssl_cafile": str(ca),
    }


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"PINREC_KAFKA_SECURITY_PROTOCOL": "TLS"}, "SECURITY_PROTOCOL"),
        ({"PINREC_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "USERNAME"),
        (
            {
                "PINREC_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "PINREC_KAFKA_SASL_MECHANISM": "GSSAPI",
            },
            "MECHANISM",
        ),
        ({"PINREC_KAFKA_SECURITY_PROTOCOL": "SSL", "PINREC_KAFKA_SSL_CAFILE": "/nope.pem"}, "CAFILE"),
    ],
)
def test_bad_settings_are_refused_with_the_variable_named(environ, message):
    with pytest.raises(ValueError, match=message):
        kafka_client_options(environ)
