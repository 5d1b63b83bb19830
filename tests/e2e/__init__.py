"""End-to-end tests: real ``agentbus serve`` processes, killed and restarted under load."""
