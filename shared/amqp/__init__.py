"""RabbitMQ for omnipush: the topology, a confirming publisher and a batch consumer runtime."""
