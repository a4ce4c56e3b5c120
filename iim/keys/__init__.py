"""Key material: password files, keystores, NSS databases, SSL contexts, trust."""
