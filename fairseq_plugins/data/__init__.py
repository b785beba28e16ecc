"""Dataset and batching helpers shared by the plugin's tasks."""
