"""Kafka side of the system: topics, the event producer and the consumer that keeps Feast sequences fresh."""
