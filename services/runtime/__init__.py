"""Running agentbus: settings, topics, and the loops that feed the pure parts from the log.

``settings`` holds every setting with its one default (``AGENTBUS_*``); ``service`` declares the
``Service`` protocol and ``open_service``, which picks the runtime from the log URL.

``decider``, ``coordinator``, ``projector`` and ``timers`` are the loops of one partition;
``outcomes`` indexes where each command's events are; ``tracker`` follows them on Kafka;
``deliveries`` POSTs the outbound subscriptions' events (``subscription_book`` follows them,
``sealing`` keeps their secrets sealed, ``webhook`` makes ``--scaling-webhook`` one of them).
``hub`` fans the events out to live subscribers (``feed``: one client's stream, replay then live;
``channels``: what a client subscribes to, and cursors). ``embedded`` runs everything in one
process on any log;
``cluster`` runs the same loops on the partitions faust-streaming assigns on Kafka.

This package does the I/O (log, read models, network) and never decides anything: every rule is
in ``services.domain`` and ``services.coordination``.
"""
