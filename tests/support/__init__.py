"""Helpers shared by the tests: containment checks, rule cases, fuzzing, models, CLI contract."""
