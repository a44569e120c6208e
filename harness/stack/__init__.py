"""Running a case's stack: the launch contract, processes, ports and the built-in launch scripts."""
