"""riverbed's Faust agents, one module per job (see each module's delivery guarantee)."""
