"""The volume: one user's files and folders on the network, their sharing, audits and repair."""
