"""Kafka connection security from the environment, for every client the project creates (consumer,
producers, admin). Secrets come from the environment (on Kubernetes: from existing Secrets), never from
files in the repository or chart values.

    PINREC_KAFKA_SECURITY_PROTOCOL  PLAINTEXT (default) | SSL | SASL_PLAINTEXT | SASL_SSL
    PINREC_KAFKA_SASL_MECHANISM     PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512 (with SASL_*)
    PINREC_KAFKA_SASL_USERNAME, PINREC_KAFKA_SASL_PASSWORD
    PINREC_KAFKA_SSL_CAFILE         CA bundle that signed the brokers' certificates (with SSL / SASL_SSL)
"""

from __future__ import annotations

import os
from collections.abc import Mapping

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def kafka_client_options(environ: Mapping[str, str] = os.environ) -> dict:
    """Keyword arguments for kafka-python clients; empty for a plaintext broker."""
    protocol = environ.get("PINREC_KAFKA_SECURITY_PROTOCOL", "").strip().upper() or "PLAINTEXT"
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"PINREC_KAFKA_SECURITY_PROTOCOL must be one of {', '.join(PROTOCOLS)}, got {protocol!r}"
        )
    if protocol == "PLAINTEXT":
        return {}
    options: dict = {"security_protocol": protocol}
    if protocol.startswith("SASL"):
        mechanism = environ.get("PINREC_KAFKA_SASL_MECHANISM", "").strip().upper() or "PLAIN"
        if mechanism not in MECHANISMS:
            raise ValueError(
                f"PINREC_KAFKA_SASL_MECHANISM must be one of {', '.join(MECHANISMS)}, got {mechanism!r}"
            )
        username = environ.get("PINREC_KAFKA_SASL_USERNAME", "")
        password = environ.get("PINREC_KAFKA_SASL_PASSWORD", "")
        if not username or not password:
            raise ValueError(f"{protocol} needs PINREC_KAFKA_SASL_USERNAME and PINREC_KAFKA_SASL_PASSWORD")
        options |= {
            "sasl_mechanism": mechanism,
            "sasl_plain_username": username,
            "sasl_plain_password": password,
        }
    cafile = environ.get("PINREC_KAFKA_SSL_CAFILE", "").strip()
    if cafile and protocol.endswith("SSL"):
        if not os.path.exists(cafile):
            raise ValueError(f"PINREC_KAFKA_SSL_CAFILE {cafile!r} does not exist")
        options["ssl_cafile"] = cafile
    return options
