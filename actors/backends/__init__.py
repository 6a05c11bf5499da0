"""The clients the actors talk through, one module per server, each the only place its
library's exceptions are mapped to the hub's errors."""
