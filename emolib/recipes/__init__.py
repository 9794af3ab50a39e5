"""Recipes: each paper's training configuration, loss parameters, evaluation helpers and plots, beside its model.

One module per notebook: ``baselines`` (02), ``fv2es`` (03, with FE2E), ``e2emal`` (04), ``emombt`` (05). A recipe
may import from every lower layer (data, models, losses, metrics, train, experiment); models never import a recipe.
"""
