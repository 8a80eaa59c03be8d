using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler.Autodiff;

namespace OrtFinetune.Training.Compiler.Gradients;

public static class MatMulConvRules
{
    public static void Register(GradientRegistry r)
    {
    }
}
