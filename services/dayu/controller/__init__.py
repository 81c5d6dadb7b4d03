"""The controller: routes each task through its DAG, to local processors or other nodes."""
