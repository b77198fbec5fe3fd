"""What a person reads about a search: the Pareto table and PNG, the HTML page, progress lines.
Loads no Ray."""
