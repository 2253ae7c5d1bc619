"""The local stack: provision and run a real Kafka broker, Redis and Prometheus on 127.0.0.1."""
