// placeholder: ModelConfig lands next
