"""`gateway bridge`: consume from the brokers people run and publish into channels.

A `Source` (one module per broker: rabbitmq, mqtt, nats, postgres) yields deliveries in the
broker's order; `routes` maps each to a channel and an event; `sink` publishes it into Redis at
most once per message id (a dedup key set in the same script as the publish); `runner` acks the
delivery only then, and reconnects with backoff when the broker or Redis is lost. The bridge
needs Redis: the dedup key and the event must be written in one atomic step, and the gateway
processes it feeds read the same Redis.
"""
