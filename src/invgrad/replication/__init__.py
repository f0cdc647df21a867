"""The replication of the paper: experiment plans, cells, tables, claims and the report."""
