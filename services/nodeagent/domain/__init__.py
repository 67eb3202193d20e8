"""A volume on one node (the kubelet volume manager's view): pure state, events, decisions."""
