"""The remote half of drsync: `drsync agent` and its protocol."""
