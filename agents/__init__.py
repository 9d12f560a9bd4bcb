"""What runs inside a worker process (installed as ``riverbed.agents``), one module per job:
``worker`` (the composition root), ``batch_agent`` (the batch tasks: process, publish,
confirm in order), ``inference`` (the processor, pure), ``labels`` (the label join, pure),
``batch`` (the types between them), ``learner`` (single writer of a model's history),
``ownership`` (who may learn which model), ``pending_labels`` (the pending-label log),
``reporter`` (metrics reports), ``supervision`` and ``runtime`` (tasks that cannot die
silently, the broker watch, log limits), ``pages`` (the worker's JSON pages). The hot path is
plain aiokafka batches, not Faust agents; Faust supervises the process, runs its timers and
serves its web pages (docs/design.md, "Code structure"). Each module states its delivery
guarantee."""
