"""fedyolo's clients, modules and aggregation as Flower (`flwr`) apps: the `flower` extra.

`client_app.app` is a Flower ClientApp around the runtime's trainer and `train_round`; `server_app.app` is a
ServerApp whose strategy (`strategy.FoldStrategy`) folds each round with the server's own `RoundFold`.
Only module weights travel, as ArrayRecords in the bundle's tensor names. Nothing outside this package
imports it, and it imports `flwr` only here: the base install, the runtime and the server never load Flower.
"""
