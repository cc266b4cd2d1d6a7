"""The control loops and what runs beside them: the sessions (teleop, record, rollout, one eval episode), the
policy runner with its schedule and inference worker, the built-in and replay policies, the loop's events
(`events`, the one interface subscribers see), the recorder subscriber, the operator's terminal and the
thread rule. Takes config sections and a `Rig`, never the whole `AppConfig`.
"""
