"""Automated red-teaming (make redteam): prompt attacks on the base, aligned and erased models, their attack
success rates, the prompts found, and the curation prompt source that feeds them back (docs/redteam.md)."""
