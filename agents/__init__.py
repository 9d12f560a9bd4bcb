"""What runs inside a worker process (installed as ``riverbed.agents``): the worker's
composition, the inference processor and its batch tasks, the label join, the learner
(single writer of a model's history) and the metrics reporter. The hot path is plain
aiokafka batches, not Faust agents; Faust supervises the process, runs its timers and serves
its web pages (see docs/design.md). Each module states its delivery guarantee."""
