"""From stored sessions to answers: statistics, the memory floor, predictions."""
