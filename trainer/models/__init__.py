"""The models: the teacher and the student (tf_keras), and their SavedModel export with every signature."""
