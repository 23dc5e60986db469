"""pruneflow's flows and its command line."""
