import numpy as np
from sklearn.datasets import load_wine
from sklearn.model_selection import train_test_split

import bnmodel
from bnmodel.launcher import spawn_server

# A table as tables come: a column of words with blanks, and missing numbers.
wine = load_wine(as_frame=True)
X = wine.data.assign(colour=np.where(wine.data["color_intensity"] > 5, "dark", "pale"))
X.loc[::9, "colour"] = None
X.loc[::7, "malic_acid"] = np.nan
y = wine.target.map(dict(enumerate(wine.target_names))).rename("cultivar")
X_train, X_test, y_train, y_test = train_test_split(X, y, stratify=y, random_state=0)

# Train (in memory, the defaults of `bnmodel train`) and evaluate.
clf = bnmodel.BNMLPClassifier(hidden=(64, 64), epochs=30, random_state=0)
clf.fit(X_train, y_train)
print(f"test accuracy {clf.score(X_test, y_test):.3f}")

# Export: batch norm folded, verified against the trained model, then written.
print(clf.export("wine.onnx", X=X_test))
clf.export(repository="models", name="wine")

# Load and predict: a DataFrame in, a DataFrame out (torch not needed for an ONNX file).
model = bnmodel.load("wine.onnx")
print(model.predict(X_test).head())

# Serve the repository (`bnmodel serve --model-repository models`): over gRPC, the same numbers.
with spawn_server(["--model-repository", "models"]) as server:
    remote = bnmodel.load(f"grpc://{server.url}/wine")
    served = remote.predict_proba(X_test)
assert served.equals(model.predict_proba(X_test))
