"""How accurate built models are against fp32: metrics over image sets and the reports."""
