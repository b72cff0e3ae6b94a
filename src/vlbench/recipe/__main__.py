"""`python -m vlbench.recipe`: the README's recipe table."""

from vlbench.recipe.docs import markdown_table

print(markdown_table())
