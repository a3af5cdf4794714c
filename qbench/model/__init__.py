"""The model a session measures: building it, where its weights come from, and the caches of quantised
weights and references."""
