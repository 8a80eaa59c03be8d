namespace OrtFinetune.Onnx;
// Temporary stub until the inference branch lands.
public static class ShapeInference { public static void Infer(Model m) { } }
