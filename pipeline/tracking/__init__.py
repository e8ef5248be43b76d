"""MLflow: the connection, the journal every stage records through, the model registry."""
