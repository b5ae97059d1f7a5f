"""Running the whole stack: `rerankd up` and its process supervisor."""
