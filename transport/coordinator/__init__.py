"""The coordinator: peer registry and reputation, username directory, mailboxes; and its client."""
