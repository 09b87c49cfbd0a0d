"""Operating it: metrics, health, doctor, logs."""
