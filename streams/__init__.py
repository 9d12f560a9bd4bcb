"""The platform core and its Kafka I/O (installed as ``riverbed.streams``): configuration,
codecs, features, models, the event-sourced history and its fold, replay, the embedded
broker, topics, telemetry and the ``riverbed`` command line."""
