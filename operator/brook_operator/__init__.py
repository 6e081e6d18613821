"""Brook's Kubernetes operator: runs broker clusters and scales consumers by their lag."""
