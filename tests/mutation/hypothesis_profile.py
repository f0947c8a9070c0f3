"""A pytest plugin the mutation runner loads (`-p hypothesis_profile`): a Hypothesis profile for
measuring, not exploring.

derandomize: the same examples on every run, so a mutant's verdict is reproducible and the
clean baseline is the very run the mutant is compared with. No deadline and no health checks:
on a shared two-core machine a slow example is load, not a failure, and must not fake a kill.
No example database: a failure found under one mutant must not be replayed under the next. No
shrinking: a verdict needs one failing example, not the smallest (shrinking a killed mutant's
example took minutes). Explicit `@settings(...)` on a test still override these defaults.
"""

from hypothesis import HealthCheck, Phase, settings

settings.register_profile("mutation", derandomize=True, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck),
                          phases=[Phase.explicit, Phase.reuse, Phase.generate])
settings.load_profile("mutation")
