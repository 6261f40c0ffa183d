"""What runs on the driver: the one place a run's rules decide and its records are written.

Under Ray Tune: ``tuning`` (``TuneMonitor``), ``scheduler`` (the rules wrapping a Tune scheduler)
and ``scheduler_stops`` (that scheduler's stops as verdicts), ``callback`` (results to the
exporter and the store). In a plain loop: ``loop`` (``LoopMonitor``). For both: ``run`` (its
directory, rules, vocabulary, budget), ``verdicts`` (recorded before they act), ``recording``
(results into the run store), ``rulestate`` (the rule engine's state across restarts),
``rulechanges`` and ``rulestatus`` (changing the rules of a running sweep, and what they do),
``summary`` (the run's summary at its end).

Uses ``monitor.training`` (the format of what a training reports), ``monitor.serving`` (the
exporter, Grafana annotations, the kill webhook) and ``monitor.store``; never
``monitor.after``.
"""
