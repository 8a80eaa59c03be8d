namespace OrtFinetune.Training.Compiler;

/// <summary>The model cannot be compiled into a training graph; the message names the op, node and value.</summary>
public sealed class CompileException : Exception
{
    public CompileException(string message, Exception? inner = null) : base(message, inner) { }
}
