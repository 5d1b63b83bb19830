"""The coordinator's pure choice: which agent takes which task, and what else to ask the decider.

``coordinator`` keeps a view of agents and queued tasks built from events and issues
``AssignTask`` (with its selection audit), ``DeferTask``, ``MarkTaskUnassignable`` and, through
``scaling``, ``DecideScaling``; ``strategies`` ranks candidates; ``ratelimit`` keeps token buckets
on event time; ``timers`` is the book of pending durable timers.

Pure: no I/O, no clock (time is always that of the events observed; the decision time in the
audit is measured, and only recorded). The runtime feeds events in and appends what comes out;
this package must never import ``events``, the runtime or the HTTP layer.
"""
