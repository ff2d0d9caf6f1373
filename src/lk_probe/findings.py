"""Findings: why a job was slow or failed, from its spans (see the README's "Why did it fail?").

``diagnose(spans)`` returns the :class:`Finding` objects of one job's trace, most specific first; ``RULES`` is the
table they come from.
"""

from ._findings import RULES, Finding, Rule, diagnose, markdown_table

__all__ = ["Finding", "Rule", "RULES", "diagnose", "markdown_table"]
