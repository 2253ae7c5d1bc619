"""Kafka connection security for every client the project creates (consumer, producers, admin). Secrets
come from the environment (on Kubernetes: from existing Secrets) through `pinrec.settings`, never from files
in the repository or chart values:

    PINREC_KAFKA_SECURITY_PROTOCOL  PLAINTEXT (default) | SSL | SASL_PLAINTEXT | SASL_SSL
    PINREC_KAFKA_SASL_MECHANISM     PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512 (with SASL_*)
    PINREC_KAFKA_SASL_USERNAME, PINREC_KAFKA_SASL_PASSWORD
    PINREC_KAFKA_SSL_CAFILE         CA bundle that signed the brokers' certificates (with SSL / SASL_SSL)
"""

from __future__ import annotations

from dataclasses import dataclass

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaSecurity:
    """How clients authenticate to the brokers; the default is a plaintext broker."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None  # with SASL_*
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None  # with SSL / SASL_SSL

    def client_options(self) -> dict:
        """Keyword arguments for kafka-python clients; empty for a plaintext broker."""
        options = {
            "security_protocol": self.protocol,
            "sasl_mechanism": self.sasl_mechanism,
            "sasl_plain_username": self.sasl_username,
            "sasl_plain_password": self.sasl_password,
            "ssl_cafile": self.ssl_cafile,
        }
        if self.protocol == "PLAINTEXT":
            return {}
        return {key: value for key, value in options.items() if value is not None}


PLAINTEXT = KafkaSecurity()


@dataclass(frozen=True)
class KafkaEndpoint:
    """A Kafka cluster to connect to, and how."""

    bootstrap: str  # host:port[,host:port]
    security: KafkaSecurity = PLAINTEXT
