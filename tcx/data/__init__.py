"""Text corpora (`conf/data/*.yaml`) and their tokenisation into fixed-length context windows."""
