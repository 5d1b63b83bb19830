"""The coordinator's pure choice: which agent takes which task, and what else to ask the decider.

- ``coordinator``: ``Coordinator``, one ``PoolView`` per pool; the names others import live here.
- ``view``: ``PoolView``, a pool's agents, queued tasks, budgets and limits, indexed for cheap
  decisions; ``handlers``: how each event type changes it (one function per type, in a table);
  ``records``: what it remembers per agent, task, capability group and queue.
- ``choice``: what to issue now: ``AssignTask`` (with its selection audit), ``DeferTask``,
  ``MarkTaskUnassignable``, ``NoteTaskWaiting`` and, through ``scaling``, ``DecideScaling``.
- ``strategies`` ranks candidates; ``ratelimit`` keeps token buckets on event time; ``scaling``
  is the scaling reactor; ``timers`` is the book of pending durable timers.

Pure: no I/O, no clock (time is always that of the events observed; the decision time in the
audit is measured, and only recorded). The runtime feeds events in and appends what comes out;
this package must never import ``events``, the runtime or the HTTP layer.
"""
