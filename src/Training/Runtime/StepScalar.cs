using Microsoft.ML.OnnxRuntime;

namespace OrtFinetune.Training.Runtime;

/// <summary>
/// A scalar input that the host changes between runs: learning rate, step, gradient divisor, loss scale,
/// accumulation reset. IOBinding copies a host input to the device when it is bound (CUDA:
/// onnxruntime/core/session/IOBinding.cc, CopyOneInputAcrossDevices), and every later run reads that copy,
/// so writing the bound host memory afterwards never reaches the graph. Setting <see cref="Value"/> writes
/// the host memory and binds it again in every binding that reads it: right on every execution provider
/// (on the CPU the rebind is a no-op, which is why CPU tests alone cannot see the difference).
/// </summary>
public sealed class StepScalar<T> : IDisposable where T : unmanaged
{
    readonly T[] _host = new T[1];
    readonly OrtValue _value;
    readonly (OrtIoBinding Binding, string Input)[] _readers;

    public StepScalar(T initial, params (OrtIoBinding Binding, string Input)[] readers)
    {
        _value = OrtValue.CreateTensorValueFromMemory(_host, []);
        _readers = readers;
        _host[0] = initial;
        Bind();
    }

    /// <summary>Setting an unchanged value binds nothing: the bound copy already holds it.</summary>
    public T Value
    {
        get => _host[0];
        set
        {
            if (EqualityComparer<T>.Default.Equals(_host[0], value)) return;
            _host[0] = value;
            Bind();
        }
    }

    void Bind()
    {
        foreach (var (binding, input) in _readers) binding.BindInput(input, _value);
    }

    public void Dispose() => _value.Dispose();
}
