"""``p2pdist demo``: the whole system on one machine (``runner``), with consumer processes
(``consumer``) that follow the trainer's versions and check each one's perplexity."""
